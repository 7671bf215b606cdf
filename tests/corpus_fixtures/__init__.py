"""Tiny on-the-fly copies of every registered corpus, one generator module per corpus.

The trees reproduce the on-disk layouts of ``docs/corpora.md`` exactly: folder and
file names, label-file syntax (tabs, ``dom  2`` with two spaces, missing dominance, the space
before ``;`` after the MSP D value, ``NaN`` values, varying decimals), whole-dialog stereo wavs,
AppleDouble ``._*`` litter, non-wav entries, per-rater label files that must be ignored, and
(optionally) one corrupt and one empty utterance wav. Audio is speech-like (harmonic source,
vibrato, syllable-rate modulation, formant resonators, pauses, a little noise) and fully
deterministic for a given ``seed``.

Plain functions only (no pytest import). Each ``make_<corpus>(root, ...)`` returns the ground
truth, one dict per utterance the reader must list; :data:`GENERATORS` maps corpus names to them
so that registry-wide tests cover every corpus.
"""

from __future__ import annotations

from .common import SR, _corrupt_bytes, speaker_voice, speech_like, write_wav
from .iemocap import IEMOCAP_CODES, IEMOCAP_DIALOGS, SUMMARY_RE, make_iemocap
from .msp_improv import MSP_CODES, MSP_CONSENSUS_RE, make_msp_improv
from .crema_d import CREMA_EMOTIONS, make_crema_d
from .msp_podcast import PODCAST_CODES, make_msp_podcast
from .emodb import EMODB_CODES, make_emodb
from .ravdess import RAVDESS_CODES, make_ravdess

#: corpus name (as registered in serprep.corpora) -> fixture generator.
GENERATORS = {
    "iemocap": make_iemocap,
    "msp-improv": make_msp_improv,
    "crema-d": make_crema_d,
    "msp-podcast": make_msp_podcast,
    "emodb": make_emodb,
    "ravdess": make_ravdess,
}

__all__ = [
    "GENERATORS",
    "IEMOCAP_CODES",
    "MSP_CODES",
    "IEMOCAP_DIALOGS",
    "SR",
    "speech_like",
    "speaker_voice",
    "write_wav",
    "make_iemocap",
    "make_msp_improv",
    "make_crema_d",
    "make_msp_podcast",
    "CREMA_EMOTIONS",
    "PODCAST_CODES",
    "make_emodb",
    "make_ravdess",
    "EMODB_CODES",
    "RAVDESS_CODES",
    "SUMMARY_RE",
    "MSP_CONSENSUS_RE",
    "_corrupt_bytes",
]
