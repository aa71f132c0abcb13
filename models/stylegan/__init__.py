"""StyleGAN2: the generator (rosinality's layout, its detection and loader), NVlabs pickles mapped onto it, and
pivotal/stitching tuning of it (tuning.py)."""
