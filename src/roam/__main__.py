from roam.cli import main

main()
