"""Errors that reach the user as one line naming the file and the problem."""
import argparse


class AgeGenderError(Exception):
    """Base class: its message is printed as-is, without a traceback, by the command-line tools."""


class CheckpointError(AgeGenderError):
    """A model checkpoint is missing, truncated, or does not match the expected network."""


class ImageError(AgeGenderError):
    """An input image cannot be read or used."""


class ImageTooLargeError(ImageError):
    """An image refused for its size (bytes or pixels) before decoding; the web service answers 413."""


class DataError(AgeGenderError):
    """A data set file (RecordIO pack, index, CSV, .mat) is malformed."""


class UsageError(AgeGenderError):
    """The options ask for something that cannot be done (e.g. an output that would overwrite an input):
    the command-line tools report it as a usage error (exit 2) before doing any work."""


class ModelOutputError(AgeGenderError):
    """A network gave NaN or infinite values: the faces concerned have no estimate."""


class UsageParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are one line, ``error: <what is wrong>``, exit 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
