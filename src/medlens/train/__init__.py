"""medlens.train"""
