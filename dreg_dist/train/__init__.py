"""The training service: trainer loop, evaluation, checkpoints, records, entry point."""
