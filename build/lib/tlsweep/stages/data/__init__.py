"""Image sets: CIFAR-10 (a Keras download or a local copy), scikit-learn's digits and a folder of your own
images (`datasets`), and their train, val and test splits."""
