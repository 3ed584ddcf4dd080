"""One module per CLI verb. Each defines NAME, HELP, configure(parser) and run(args) -> int.

Modules here must stay cheap to import (the CLI imports all of them to build --help):
import heavy libraries inside run().
"""
