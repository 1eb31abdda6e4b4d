"""Adversarial attacks on NR-IQA models, one module per attack, shared through a registry.

``create_attack(name, **params)`` builds one of ``list_attacks()``: fgsm, ifgsm, pgd, perceptual (white
box), uap, korhonen (transfer from a surrogate), square (score queries only). ``attack(model, x)``
returns 8-bit adversarial images; ``run_attack(attack, model, x)`` also returns clean / adversarial
scores and SSIM / PSNR / ℓ∞ of the adversarial images.
"""

from training.attacks import fgsm, korhonen, perceptual, pgd, square, uap  # noqa: F401  (register)
from training.attacks._registry import create_attack, is_attack, list_attacks, register_attack
from training.attacks.base import Attack
from training.attacks.fgsm import FGSM, IFGSM, intensity_sweep
from training.attacks.korhonen import Korhonen
from training.attacks.perceptual import PerceptualAttack
from training.attacks.pgd import PGD
from training.attacks.quality import AttackResult, adversarial_quality, run_attack, score_images
from training.attacks.square import SquareAttack
from training.attacks.uap import UAP

__all__ = [
    "FGSM",
    "IFGSM",
    "PGD",
    "UAP",
    "Attack",
    "AttackResult",
    "Korhonen",
    "PerceptualAttack",
    "SquareAttack",
    "adversarial_quality",
    "create_attack",
    "intensity_sweep",
    "is_attack",
    "list_attacks",
    "register_attack",
    "run_attack",
    "score_images",
]
