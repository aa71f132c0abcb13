"""What every model family shares and none of them owns: reading weight files (checkpoint_io), the loaded-model
descriptor, precision policies, devices, errors, StyleGAN latents and directions, and shared layers. It imports
no family."""
