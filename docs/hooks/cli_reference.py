"""mkdocs hook: each command page's option reference, generated from featx's own argument parser.

A page writes ``<!-- cli: extract -->`` where the reference of ``featx extract`` belongs; the hook
replaces it with the command's usage line, its example and a table of its arguments and options,
read from ``featx.cli.build_parser()``, so the reference cannot drift from ``--help``.
``<!-- cli-commands -->`` becomes a table of every command, linked to its page.

The build fails (PluginError, which ``mkdocs build`` reports and exits on) when a marker names a
command the parser does not have, or when one of the parser's commands has no marker on any
page: a new command cannot go undocumented.
"""

from __future__ import annotations

import argparse
import functools
import html
import posixpath
import re

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"<!--\s*cli:\s*(?P<name>[^\s>]+)\s*-->")
COMMANDS_MARKER = re.compile(r"<!--\s*cli-commands\s*-->")
WIDTH = 100  # usage lines are wrapped at this width, whatever the terminal running mkdocs

# command name -> src_uri of the page that documents it (filled in by on_files)
_pages: dict[str, str] = {}


@functools.cache
def _commands() -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand's parser and its one-line help, in the parser's order."""
    from featx.cli import build_parser  # torch-free: the command line's help imports nothing heavy

    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        raise PluginError("cli_reference: featx.cli.build_parser() has no subcommands")
    helps = {a.dest: a.help or "" for a in actions[0]._choices_actions}
    return {name: (sub, helps.get(name, "")) for name, sub in actions[0].choices.items()}


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(parser.prog, width=WIDTH, max_help_position=40)


def _code(text: str) -> str:
    """Inline code safe inside a Markdown table cell (a literal | would end the cell)."""
    return f"<code>{html.escape(text).replace('|', '&#124;')}</code>"


def _text(text: str) -> str:
    """Help prose for a table cell: one line, pipes escaped outside code spans."""
    text = " ".join(text.split())
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = html.escape(parts[i], quote=False).replace("|", "&#124;")
    return "`".join(parts)


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    default = action.default
    if default is None or default is argparse.SUPPRESS or default == []:
        return ""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off"
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return _code(str(default))


def render(name: str) -> str:
    """The Markdown reference of ``featx NAME``: usage, example, then one row per argument."""
    commands = _commands()
    if name not in commands:
        raise PluginError(f"cli_reference: no command {name!r} in featx.cli.build_parser(); "
                          f"the commands are: {', '.join(commands)}")
    parser, _ = commands[name]
    formatter = _formatter(parser)  # not parser.format_usage(): that wraps at the terminal's width
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    usage = formatter.format_help().strip()
    lines = ["```text", usage, "```", ""]
    if parser.epilog:
        label, _, example = parser.epilog.partition(":")
        lines += [f"{label.strip().capitalize()}: `{example.strip()}`" if example else parser.epilog, ""]
    lines += ["| argument or option | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help is argparse.SUPPRESS:
            continue
        if action.option_strings:
            invocation = formatter._format_action_invocation(action)
        else:  # a positional: its metavar, or its name
            invocation = formatter._format_args(action, action.dest)
        help_text = formatter._expand_help(action) if action.help else ""
        if action.choices is not None and not action.option_strings:
            help_text += f" (one of {', '.join(map(str, action.choices))})"
        lines.append(f"| {_code(invocation)} | {_default(action)} | {_text(help_text)} |")
    lines += ["", "Every command also takes `-h`, `--help`: the same reference on the terminal."]
    return "\n".join(lines)


def render_commands(page_src: str) -> str:
    lines = ["| command | what it does |", "|---|---|"]
    for name, (_, help_text) in _commands().items():
        link = posixpath.relpath(_pages[name], posixpath.dirname(page_src) or ".")
        lines.append(f"| [`featx {name}`]({link}) | {_text(help_text)} |")
    return "\n".join(lines)


def on_files(files, config):
    """Find each command's page before any page is rendered; fail on unknown or missing ones."""
    _pages.clear()
    commands = _commands()
    for file in files.documentation_pages():
        for match in MARKER.finditer(file.content_string):
            name = match["name"]
            if name not in commands:
                raise PluginError(f"cli_reference: {file.src_uri}: <!-- cli: {name} --> names no command "
                                  f"of featx.cli.build_parser(); the commands are: {', '.join(commands)}")
            _pages.setdefault(name, file.src_uri)
    missing = [name for name in commands if name not in _pages]
    if missing:
        raise PluginError(f"cli_reference: no page documents {', '.join(missing)}: give each command a "
                          f"page under docs/commands/ with its <!-- cli: NAME --> marker, and add it to "
                          f"mkdocs.yml's nav")
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = MARKER.sub(lambda m: render(m["name"]), markdown)
    return COMMANDS_MARKER.sub(lambda m: render_commands(page.file.src_uri), markdown)
