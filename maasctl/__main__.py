from maasctl.cli import main

main()
