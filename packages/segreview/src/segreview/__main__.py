from segreview.cli import main

main()
