from commonspace.cli import main

main()
