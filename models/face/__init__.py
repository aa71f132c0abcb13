"""Faces: detection (RetinaFace), landmarks, FFHQ alignment, paste-back, video tracking and temporal smoothing."""
