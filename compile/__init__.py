"""lowlight.compile"""
