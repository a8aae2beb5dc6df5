"""The engine (torch): own denoising loop over diffusers components, batching, checkpoints."""
