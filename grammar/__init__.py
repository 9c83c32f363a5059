"""einc.grammar"""
