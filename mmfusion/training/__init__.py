"""Training on the Hugging Face Trainer: arguments, setup from arguments, the input cache, collator, trainer, sweeps."""
