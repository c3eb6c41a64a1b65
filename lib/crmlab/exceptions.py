"""One small exception hierarchy.

Messages name the table, column, row and check that failed -- never the
personal value that failed it.
"""

from __future__ import annotations


class CrmlabError(Exception):
    """Base class of every error crmlab raises on purpose."""

    exit_code = 1


class DataContractError(CrmlabError):
    """The data does not meet the contract (a missing table or column, an
    unreadable file, a value that cannot be used).

    Parameters
    ----------
    message : str
        What is wrong, in plain words.
    table, column, row, check : optional
        Where it is wrong. ``row`` is the 1-based data row in the source.
    """

    exit_code = 2

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None,
                 row: int | None = None, check: str | None = None):
        self.table, self.column, self.row, self.check = table, column, row, check
        where = ", ".join(
            f"{k}={v}" for k, v in
            (("table", table), ("column", column), ("row", row), ("check", check))
            if v is not None
        )
        super().__init__(f"{message} ({where})" if where else message)


class NoDataError(CrmlabError):
    """The source holds no usable rows for what was asked."""

    exit_code = 3


class ParameterError(CrmlabError):
    """A run parameter is unknown or has the wrong type."""

    exit_code = 2


class ReportFailed(CrmlabError):
    """A notebook raised while it ran; ``cell`` is its index when known."""

    exit_code = 1

    def __init__(self, message: str, *, cell: int | None = None):
        self.cell = cell
        super().__init__(message)


class RunTimeout(CrmlabError):
    """A run went past its time limit and was stopped."""

    exit_code = 4


class RunLocked(CrmlabError):
    """A run of the same report is already in progress."""

    exit_code = 5


class SourceUnavailable(CrmlabError):
    """The data source did not answer (a database that refuses or drops the
    connection, a server that cannot be reached). Unlike a broken contract,
    this may pass by itself, so a scheduled run retries it."""

    exit_code = 1
