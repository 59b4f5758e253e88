"""Image data, networks and training for consistency models on image data sets."""
