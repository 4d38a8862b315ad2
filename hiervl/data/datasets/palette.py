"""Class colour palettes."""

from typing import List, Tuple


def bit_palette(num_colors: int) -> List[Tuple[int, int, int]]:
    """The PASCAL VOC colour map: class id bits spread over the high bits of R, G and B.

    Args:
        num_colors: number of colours (<= 256).

    Returns:
        ``num_colors`` RGB triples; VOC uses the first 21 and (224, 224, 192) for 255.
    """
    colors = []
    for label in range(num_colors):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors
