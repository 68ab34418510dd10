def main() -> None:  # replaced by the CLI module
    raise SystemExit("tidelog CLI not built yet")
