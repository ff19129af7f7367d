from qbscale.cli import main  # type: ignore[import-not-found]  # (cli/ is qbscale.cli)

main()
