"""Training with the Hugging Face Trainer: arguments, inputs, collator, metrics, evaluation report, model card, sweeps."""
