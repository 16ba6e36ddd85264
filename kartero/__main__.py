from kartero.cli import main

main()
