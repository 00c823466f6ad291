from rsyn.cli import main

main()
