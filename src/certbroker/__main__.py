from certbroker.cli import main

main()
