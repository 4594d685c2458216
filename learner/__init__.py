"""The learning side: TD3 (`td3`), its networks (`networks`), the learner loop that paces updates
to the replay ratio (`learner`), the agent's state registry (`state`), the replay (`replay/`) and
the one error root of the project (`errors`)."""
