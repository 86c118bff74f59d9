"""What the real efficientnet-lite0 weights say about the test photos (see shared FACTS)."""

#: ImageNet-1k indices of the domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = frozenset(range(281, 286))
ESPRESSO = 967
