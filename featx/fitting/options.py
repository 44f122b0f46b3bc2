"""fit-head's defaults, written once for the library and the command line (no torch, no
scikit-learn, so that the command line's help costs neither)."""

MAX_MEMORY = 1 << 30  # features larger than this are streamed from disk, not read whole
# A streamed epoch over a large cache is already many steps: 160,000 rows make 625 minibatches,
# where 100 epochs over a few thousand images (the in-memory default) make about 1,500.
STREAM_EPOCHS = 10
VAL_SPLIT = 0.2  # of train, held out for validation when the data has no val split
SEED = 0
# A search fits a head about 10 times: done by default where the training features hold at most
# this many values (a few thousand images of ~1,000 features), where it costs seconds.
AUTO_SEARCH_VALUES = 10_000_000
