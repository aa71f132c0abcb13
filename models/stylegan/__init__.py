"""StyleGAN2: the generator (rosinality's layout, its detection and loader) and NVlabs pickles mapped onto it."""
