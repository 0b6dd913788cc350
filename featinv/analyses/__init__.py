"""Operations on feature maps and their reconstructions, each with a figure and numbers."""
