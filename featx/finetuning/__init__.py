"""Stage three, fine-tuning: the recipe and its defaults (torch-free), the network being tuned, one
epoch's loop, the checkpoint that lets a run resume, and the run itself."""
