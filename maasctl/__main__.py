from maasctl.launcher import main

main()
