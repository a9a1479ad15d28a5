"""The server's defaults, in a module of their own so that the command line can name them
in its help without importing the server."""

from typing import Final

DEFAULT_STORE: Final = "sqlite:///katar.db"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 3000
