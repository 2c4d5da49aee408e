"""Receptive field and effective stride of each layer, by the usual recurrence.

For a layer with kernel k and stride s: ``rf_out = rf_in + (k - 1) * jump_in`` and ``jump_out = jump_in * s``
(jump = the distance in input pixels between neighbouring units). Element-wise layers (ReLU, LRN, dropout)
change neither. A fully connected layer sees its whole input map, i.e. acts as a kernel of the map's size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    size: int = 1  # receptive field side, input pixels
    jump: int = 1  # effective stride, input pixels
    start: float = 0.5  # centre of the first unit's field, input pixel coordinates

    def through(self, kernel: int, stride: int, padding: int = 0) -> Field:
        return Field(
            size=self.size + (kernel - 1) * self.jump,
            jump=self.jump * stride,
            start=self.start + ((kernel - 1) / 2 - padding) * self.jump,
        )

    def box(self, row: int, col: int, image_size: int | None = None) -> tuple[int, int, int, int]:
        """Input-pixel box ``(top, left, bottom, right)`` (exclusive ends) seen by unit ``(row, col)``.

        Clipped to the image when ``image_size`` is given (padding makes border fields stick out).
        """
        cy = self.start + row * self.jump
        cx = self.start + col * self.jump
        half = self.size / 2
        top, left = round(cy - half), round(cx - half)
        bottom, right = top + self.size, left + self.size
        if image_size is not None:
            top, left = max(0, top), max(0, left)
            bottom, right = min(image_size, bottom), min(image_size, right)
        return top, left, bottom, right
