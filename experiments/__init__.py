"""Entry points: `python -m experiments.<name> --config configs/<name>.py --workdir DIR`."""
