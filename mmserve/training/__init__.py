"""Training loops for the bundled models (`mmserve train ...`)."""
