"""training: trains the encoders and the GAN and measures them (`latentsight.training`)."""
