from qbscale.cli import main

main()
