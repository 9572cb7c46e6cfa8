"""Pre- and post-processing per task, shared by training, parity and serving so they never disagree."""
