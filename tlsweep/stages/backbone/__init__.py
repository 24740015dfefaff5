"""The backbones: where one comes from (`source`: keras.applications, a Keras-Hub preset, a saved Keras file), the
keras.applications CNNs and their cut layers (`models`) and stages (`model_stages`), Keras-Hub presets (`hub`) and
a transformer's blocks as cuts (`blocks`), saved models (`file`), joined cuts (`composite`), what weights hold
(`content`), and the precision a backbone computes in (`precision`)."""
