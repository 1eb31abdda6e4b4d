"""Adversarial attacks on NR-IQA models, one module per attack, shared through a registry.

``create_attack(name, **params)`` builds one of ``list_attacks()``: fgsm, ifgsm, pgd, perceptual, ioi
(white box), ranking (white box, on the whole set: ``on_set``), uap, korhonen (transfer from a
surrogate: ``needs_surrogate``), square (score queries only). ``attack(model, x)`` returns 8-bit
adversarial images, ``attack.attack_set(model, batches)`` those of a set given as batches;
``run_attack(attack, model, x)`` also returns clean / adversarial scores and SSIM / PSNR / ℓ∞ of the
adversarial images (``measure_attack`` for adversarial images made elsewhere).
"""

from training.gate.attacks import (  # noqa: F401  (register)
    fgsm,
    ioi,
    korhonen,
    perceptual,
    pgd,
    ranking,
    square,
    uap,
)
from training.gate.attacks._registry import (
    attack_class,
    create_attack,
    is_attack,
    list_attacks,
    register_attack,
)
from training.gate.attacks.base import Attack, FitImages
from training.gate.attacks.fgsm import FGSM, IFGSM, intensity_sweep
from training.gate.attacks.ioi import IOI
from training.gate.attacks.korhonen import Korhonen
from training.gate.attacks.perceptual import PerceptualAttack
from training.gate.attacks.pgd import PGD
from training.gate.attacks.quality import (
    AttackResult,
    adversarial_quality,
    measure_attack,
    run_attack,
    score_images,
)
from training.gate.attacks.ranking import RankingAttack
from training.gate.attacks.square import SquareAttack
from training.gate.attacks.uap import UAP

__all__ = [
    "FGSM",
    "IFGSM",
    "IOI",
    "PGD",
    "UAP",
    "Attack",
    "AttackResult",
    "FitImages",
    "Korhonen",
    "PerceptualAttack",
    "RankingAttack",
    "SquareAttack",
    "adversarial_quality",
    "attack_class",
    "create_attack",
    "intensity_sweep",
    "is_attack",
    "list_attacks",
    "measure_attack",
    "register_attack",
    "run_attack",
    "score_images",
]
