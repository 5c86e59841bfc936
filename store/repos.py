"""The repositories under their former module name, for modules that still import them from here.

Each repository lives in the module of its table family (store/audit.py, channels.py, bindings.py,
seen.py, outbox.py, poll_writer.py, records.py); import from there in new code.
"""

from store.audit import AuditEntry, AuditLog
from store.bindings import Bindings
from store.channels import Channels
from store.outbox import REPLAYABLE, Delivery, DeliveryStatus, Outbox
from store.poll_writer import PollWriter
from store.records import Change, load_record
from store.seen import ChainRow, Seen, SourceState

__all__ = ["REPLAYABLE", "AuditEntry", "AuditLog", "Bindings", "ChainRow", "Change", "Channels", "Delivery",
           "DeliveryStatus", "Outbox", "PollWriter", "Seen", "SourceState", "load_record"]
