from lmzip.cli import main

main()
