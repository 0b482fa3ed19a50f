"""Errors the library raises (the command line turns them into messages and exit codes)."""


class SNNetLoadError(RuntimeError):
    """SN-Net weights could not be loaded. The message names the repo or folder, the file and what to do."""

    def __init__(self, message: str, location: str = '', filename: str = ''):
        super().__init__(message)
        self.location, self.filename = location, filename
