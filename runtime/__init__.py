"""lowlight.runtime"""
