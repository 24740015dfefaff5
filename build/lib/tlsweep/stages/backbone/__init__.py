"""The backbones: every keras.applications CNN, its preprocessing and cut layers (`models`), and its stages
(`model_stages`)."""
