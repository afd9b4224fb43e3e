"""What a model is: encoder -> decoder -> named heads, its losses, weights and checkpoints."""
