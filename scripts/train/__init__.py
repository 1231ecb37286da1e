"""Trainers, one package per task, each the same shape: a config dataclass, `run(config)`,
and a CLI (`cli.main`) that builds the config from argparse."""
