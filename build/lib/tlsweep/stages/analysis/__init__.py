"""What a run reports and compares: per-split classification reports and confusion matrices (`report`), and
linear CKA between cuts (`cka`)."""
