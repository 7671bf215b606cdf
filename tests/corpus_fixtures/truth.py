"""The ground truth a fixture generator returns: a list with what must NOT be listed attached."""

from __future__ import annotations


class CorpusTruth(list):
    """One dict per utterance the reader must list (a plain ``list[dict]`` for any caller), plus:

    * ``skipped``: what the reader must skip and record as a LabelIssue, one dict each with
      ``where`` (the issue's ``where``), ``utt_id`` (the issue's ``utt_id``, "" if none) and
      ``message`` (a fragment of the issue's message);
    * ``ignored``: paths (relative to the root) the generator wrote that the reader must neither
      list nor report (litter, other formats, files no label names).

    Listed utterances whose audio the build must record as a failure carry ``failed=True`` and
    ``failure`` (a fragment of the error).
    """

    def __init__(self, utterances=(), skipped=(), ignored=()):
        super().__init__(utterances)
        self.skipped: list[dict] = list(skipped)
        self.ignored: list[str] = list(ignored)
