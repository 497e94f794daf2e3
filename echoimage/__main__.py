from echoimage.cli import main

main()
