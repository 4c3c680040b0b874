"""The generic estimators against exact values: AIS and reverse AIS (Neal 2001; Grosse et al. 2015)
bracket the exact log p(x) of a linear-Gaussian model, AIS weights with a pilot-fixed step-size
schedule are unbiased (and those that reuse the pilot's own chains are not), and SIVI's L_K
(Yin & Zhou 2018) rises towards its closed-form limit, which is below log p(x)."""

from __future__ import annotations

import math

import pytest
import torch
from test_packs import two_datasets  # noqa: F401 (a fixture)  tests/ is on sys.path
from torch.distributions import MultivariateNormal, Normal

from avae.core import objectives as obj
from avae.core.nets import MemberRandom
from avae.likelihood import estimators as est

pytestmark = pytest.mark.usefixtures("one_thread")


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I) per member, with fixed random W and b, so that
    log p(x) = log N(x; b, W W^T + sigma^2 I) and p(z|x) = N(mu, Sigma) are exact."""

    def __init__(self, members: int, points: int, latent: int, dim: int, sigma: float, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(members, dim, latent, generator=g, dtype=torch.float64)
        self.b = torch.randn(members, 1, dim, generator=g, dtype=torch.float64)
        self.sigma = sigma
        z = torch.randn(members, points, latent, generator=g, dtype=torch.float64)
        noise = sigma * torch.randn(members, points, dim, generator=g, dtype=torch.float64)
        self.x = torch.einsum("sdz,sbz->sbd", self.w, z) + self.b + noise
        cov = self.w @ self.w.transpose(1, 2) + sigma**2 * torch.eye(dim, dtype=torch.float64)
        self.exact = MultivariateNormal(self.b, cov.unsqueeze(1)).log_prob(self.x)  # [S, B]
        precision = torch.eye(latent, dtype=torch.float64) + self.w.transpose(1, 2) @ self.w / sigma**2
        self.post_cov = torch.linalg.inv(precision)  # [S, Z, Z]
        self.post_loc = torch.einsum("syz,sdz,sbd->sby", self.post_cov, self.w, self.x - self.b) / sigma**2

    def log_lik(self, z: torch.Tensor) -> torch.Tensor:
        mean = torch.einsum("sdz,nsbz->nsbd", self.w, z) + self.b
        return Normal(mean, self.sigma).log_prob(self.x).sum(-1)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        return obj.log_prior(z) + self.log_lik(z)

    def posterior_draws(self, noise: MemberRandom, n: int) -> torch.Tensor:
        """n exact draws from p(z|x): [n, S, B, Z]."""
        eps = est.normal_draws(noise, n, *self.post_loc.shape[1:]).double()
        chol = torch.linalg.cholesky(self.post_cov)
        return self.post_loc + torch.einsum("syz,nsbz->nsby", chol, eps)

    def prior_draws(self, noise: MemberRandom, n: int) -> torch.Tensor:
        """n draws from p(z): [n, S, B, Z]."""
        return est.normal_draws(noise, n, self.x.shape[1], self.w.shape[2]).double()

    def gaussian_elbo(self, mean: torch.Tensor, var: float) -> torch.Tensor:
        """E_q[log p(x, z) - log q(z)] for q = N(mean, var I), in closed form: [S, B]."""
        latent, dim = self.w.shape[2], self.w.shape[1]
        resid = self.x - torch.einsum("sdz,sbz->sbd", self.w, mean) - self.b
        trace = self.w.pow(2).sum((1, 2)).unsqueeze(1)  # tr(W^T W) per member
        prior = -0.5 * latent * math.log(2 * math.pi) - 0.5 * (mean.pow(2).sum(-1) + latent * var)
        lik = -0.5 * dim * math.log(2 * math.pi * self.sigma**2)
        lik = lik - (resid.pow(2).sum(-1) + var * trace) / (2 * self.sigma**2)
        entropy = 0.5 * latent * math.log(2 * math.pi * math.e * var)
        return prior + lik + entropy


def ais_errors(lg: LinearGaussian, steps: int, chains: int, hmc: est.HMCSettings, seed: int):
    """Forward AIS from the prior and reverse AIS from exact posterior draws, each with its default
    pilot run: their errors against the exact log p(x), [S, B] each."""
    betas = obj.sigmoid_schedule(steps)
    members = lg.x.shape[0]
    noise = MemberRandom(range(seed, seed + members), "ais")
    log_w, _ = est.ais(obj.log_prior, lg.log_lik, lg.prior_draws(noise, chains), betas, noise, hmc)
    forward = est.ais_log_marginal(log_w) - lg.exact
    z_post = lg.posterior_draws(MemberRandom(range(seed, seed + members), "posterior"), chains)
    log_w, _ = est.ais(obj.log_prior, lg.log_lik, z_post, betas.flip(0), noise, hmc)
    return forward, est.reverse_ais_log_marginal(log_w) - lg.exact


def test_ais_and_reverse_ais_bracket_the_exact_log_marginal():
    lg = LinearGaussian(members=2, points=8, latent=10, dim=50, sigma=2.0)
    hmc = est.HMCSettings(leapfrog=5)
    short_forward, short_reverse = (float(e.mean()) for e in ais_errors(lg, 50, 8, hmc, seed=0))
    forward, reverse = (float(e.mean()) for e in ais_errors(lg, 1000, 8, hmc, seed=0))
    # with 50 steps the bracket is wide: forward far below, reverse above
    assert short_forward < -1 and short_reverse > 0.5, (short_forward, short_reverse)
    assert short_reverse - short_forward > 2, (short_forward, short_reverse)
    # with 1,000 it is tight (means over 16 points; one point's error has sd ~0.5 with 8 chains)
    assert forward < 0.3 and reverse > -0.3, (forward, reverse)
    assert -0.3 < reverse - forward < 1.0, (forward, reverse)


def unbiasedness_ratios(runs: int, reuse_pilot: bool) -> torch.Tensor:
    """exp(log w - log p(x)) of `runs` independent one-chain AIS runs on one point (2-d latent, 20
    steps, a strongly adapting pilot per run). With `reuse_pilot` the counted chain is the pilot's
    own chain (same start, same draws): the adaptive scheme, whose step depends on its history."""
    lg = LinearGaussian(members=1, points=1, latent=2, dim=5, sigma=1.0)
    lg.x, lg.exact = lg.x.expand(1, runs, -1), lg.exact.expand(1, runs)
    noise = MemberRandom([0], "unbiased")
    betas = obj.sigmoid_schedule(20)
    hmc = est.HMCSettings(leapfrog=5, step_size=0.5, adapt=0.2)
    z0 = lg.prior_draws(noise, 1)
    start = noise.get_state()
    schedule = est.pilot_step_sizes(obj.log_prior, lg.log_lik, z0, betas, noise, hmc)
    if reuse_pilot:
        noise.set_state(start)
    else:
        z0 = lg.prior_draws(noise, 1)
    log_w, _ = est.ais(obj.log_prior, lg.log_lik, z0, betas, noise, hmc, step_sizes=schedule)
    return (log_w - lg.exact).exp().flatten()


def test_ais_weights_with_a_pilot_fixed_schedule_are_unbiased():
    runs = 16000
    fresh = unbiasedness_ratios(runs, reuse_pilot=False)
    mean, se = float(fresh.mean()), float(fresh.std()) / math.sqrt(runs)
    assert se < 0.015, se  # enough power to see a bias of a few percent
    assert abs(mean - 1) < 4 * se, (mean, se)
    # the test can fail: counting the adapting chains themselves biases the weights upwards
    adaptive = unbiasedness_ratios(runs, reuse_pilot=True)
    mean_a, se_a = float(adaptive.mean()), float(adaptive.std()) / math.sqrt(runs)
    assert mean_a - 1 > 4 * se_a, (mean_a, se_a)


def test_pilot_adapts_and_a_given_schedule_is_used_unchanged(monkeypatch):
    lg = LinearGaussian(members=2, points=3, latent=2, dim=5, sigma=1.0)
    betas = obj.sigmoid_schedule(30)
    hmc = est.HMCSettings(leapfrog=3, step_size=0.05, pilot_chains=2)
    noise = MemberRandom([0, 1], "schedule")
    z0 = lg.prior_draws(noise, 4)
    pilot = est.pilot_step_sizes(obj.log_prior, lg.log_lik, z0[:2], betas, noise, hmc)
    assert pilot.shape == (30, 2, 3)
    assert bool((pilot[0] == hmc.step_size).all())
    assert bool((pilot[-1] > 1.5 * hmc.step_size).all())  # 0.05 is too small: acceptance ~1, so it grows

    schedule = 0.1 + 0.2 * torch.rand(30, 2, 3, generator=torch.Generator().manual_seed(0))
    used = []

    def recording(chains, adapt):
        used.append(chains.step.clone())  # the step this transition uses
        return transition(chains, adapt)

    transition = est.AISChains.transition
    monkeypatch.setattr(est.AISChains, "transition", recording)
    _, info = est.ais(obj.log_prior, lg.log_lik, z0, betas, noise, hmc, step_sizes=schedule)
    torch.testing.assert_close(torch.stack(used), schedule, rtol=0, atol=0)
    assert info["final_step_size_median"] == pytest.approx(float(schedule[-1].median()))
    with pytest.raises(ValueError, match="one row per transition"):
        est.ais(obj.log_prior, lg.log_lik, z0, betas, noise, hmc, step_sizes=schedule[:-1])


def test_default_pilot_starts_from_the_first_chains_with_its_own_draws():
    lg = LinearGaussian(members=2, points=3, latent=2, dim=5, sigma=1.0)
    betas = obj.sigmoid_schedule(10)
    hmc = est.HMCSettings(leapfrog=3, pilot_chains=2)
    z0 = lg.prior_draws(MemberRandom([0, 1], "start"), 5)
    log_w, info = est.ais(obj.log_prior, lg.log_lik, z0, betas, MemberRandom([0, 1], "run"), hmc)
    noise = MemberRandom([0, 1], "run")
    schedule = est.pilot_step_sizes(obj.log_prior, lg.log_lik, z0[:2], betas, noise, hmc)
    expected, _ = est.ais(obj.log_prior, lg.log_lik, z0, betas, noise, hmc, step_sizes=schedule)
    torch.testing.assert_close(log_w, expected, rtol=0, atol=0)
    assert info["final_step_size_median"] == pytest.approx(float(schedule[-1].median()))


def test_sivi_rises_towards_the_elbo_of_its_exact_marginal():
    """q(z|x, eps) = N(m + a eps, s^2 I), eps ~ N(0, I): the marginal q(z|x) = N(m, (a^2 + s^2) I)
    is exact, so L_K's limit E_q[log p(x, z) - log q(z|x)] has a closed form, KL(q || p(z|x))
    below log p(x)."""
    lg = LinearGaussian(members=1, points=8, latent=2, dim=5, sigma=1.0)
    a, s, samples = 0.3, 0.3, 1000
    limit = lg.gaussian_elbo(lg.post_loc, a * a + s * s)
    assert float((lg.exact - limit).mean()) > 0.1  # q's marginal is not the posterior
    bounds = {}
    for k in (1, 10, 100, 1000):
        noise = MemberRandom([0], "sivi-own")  # the same own draws for every K: only the mixture differs
        own = Normal(lg.post_loc + a * est.normal_draws(noise, samples, 8, 2).double(), s)
        extra_eps = est.normal_draws(MemberRandom([0], "sivi-extra"), k, 8, 2).double()
        extra = Normal(lg.post_loc + a * extra_eps, s)
        bounds[k] = float((est.sivi(lg.log_joint, own, extra, noise) - limit).mean())
    assert bounds[1] < -0.25, bounds  # far below with one extra component
    assert bounds[1] < bounds[10] < bounds[100] < bounds[1000] + 0.01, bounds
    assert abs(bounds[1000]) < 0.03, bounds
    gap = float((lg.exact - limit).mean())
    assert all(b < gap - 0.05 for b in bounds.values()), (bounds, gap)


def test_iwae_converges_to_the_exact_log_marginal_from_below():
    lg = LinearGaussian(members=2, points=8, latent=3, dim=12, sigma=0.5)
    # deliberately imperfect: shifted mean, too wide, and diagonal where the posterior is not
    scale = torch.diagonal(lg.post_cov, dim1=-2, dim2=-1).sqrt().unsqueeze(1).expand_as(lg.post_loc)
    q = Normal(lg.post_loc + 0.3, 1.5 * scale)
    bounds = est.iwae(lg.log_joint, q, MemberRandom([0, 1], "test"), (1, 10, 100, 1000), chunk=500)
    errors = {k: float((v - lg.exact).mean()) for k, v in bounds.items()}
    assert errors[1] < -1.0  # the ELBO is well below log p(x)
    assert errors[1] < errors[10] < errors[100] + 0.05
    for k, tolerance in ((10, 3.0), (100, 0.3), (1000, 0.12)):
        assert abs(errors[k]) < tolerance, (k, errors)


# --- the static-buffer units against a plain loop ---------------------------------------------------


def textbook_ais(log_prior, log_lik, z0, betas, noise, hmc, schedule=None):
    """AIS written as a plain loop over transitions (the form before the static-buffer units):
    returns the log-weights and the steps used. Draws: the momenta, then the Metropolis uniforms."""

    def evaluate(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp, ll = log_prior(z), log_lik(z)
            grad_lp = torch.autograd.grad(lp.sum(), z, retain_graph=True)[0]
            return lp.detach(), ll.detach(), grad_lp, torch.autograd.grad(ll.sum(), z)[0]

    z, (lp, ll, glp, gll) = z0, evaluate(z0)
    log_w = torch.zeros(z0.shape[:-1], dtype=torch.float64)
    step, used = torch.full(z0.shape[1:-1], hmc.step_size), []
    for t in range(1, len(betas)):
        step = step if schedule is None else schedule[t - 1]
        used.append(step)
        beta = float(betas[t])
        log_w += ((beta - float(betas[t - 1])) * ll).double()
        eps = step.unsqueeze(0).unsqueeze(-1)
        p0 = est.normal_draws(noise, z.shape[0], *z.shape[2:])
        p, new = p0 + 0.5 * eps * (glp + beta * gll), z
        for i in range(hmc.leapfrog):
            new = new + eps * p
            nlp, nll, nglp, ngll = evaluate(new)
            p = p + (eps if i < hmc.leapfrog - 1 else 0.5 * eps) * (nglp + beta * ngll)
        h0 = -(lp + beta * ll) + 0.5 * p0.pow(2).sum(-1)
        h1 = -(nlp + beta * nll) + 0.5 * p.pow(2).sum(-1)
        log_accept = (h0 - h1).clamp(max=0).nan_to_num(nan=-math.inf)
        accept = torch.log(est.uniform_draws(noise, z.shape[0], *z.shape[2:-1])) < log_accept
        keep = accept.unsqueeze(-1)
        z, glp, gll = torch.where(keep, new, z), torch.where(keep, nglp, glp), torch.where(keep, ngll, gll)
        lp, ll = torch.where(accept, nlp, lp), torch.where(accept, nll, ll)
        if schedule is None:
            rate = log_accept.exp().mean(0)
            step = step * torch.where(rate > hmc.target_accept, 1 + hmc.adapt, 1 - hmc.adapt)
    return log_w, torch.stack(used)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ais_static_buffer_transitions_equal_a_plain_loop_bitwise(dtype):
    lg = LinearGaussian(members=2, points=3, latent=2, dim=5, sigma=1.0)
    if dtype == torch.float32:
        lg.w, lg.b, lg.x = lg.w.float(), lg.b.float(), lg.x.float()
    betas = obj.sigmoid_schedule(25)
    hmc = est.HMCSettings(leapfrog=3, step_size=0.3, adapt=0.1)
    z0 = lg.prior_draws(MemberRandom([0, 1], "start"), 4).to(dtype)
    ours = MemberRandom([0, 1], "run")
    schedule = est.pilot_step_sizes(obj.log_prior, lg.log_lik, z0[:2], betas, ours, hmc)
    log_w, _ = est.ais(obj.log_prior, lg.log_lik, z0, betas, ours, hmc, step_sizes=schedule)

    plain = MemberRandom([0, 1], "run")
    _, expected_schedule = textbook_ais(obj.log_prior, lg.log_lik, z0[:2], betas, plain, hmc)
    expected, _ = textbook_ais(obj.log_prior, lg.log_lik, z0, betas, plain, hmc, expected_schedule)
    assert bool((schedule != hmc.step_size).any())  # the pilot did adapt
    torch.testing.assert_close(schedule, expected_schedule, rtol=0, atol=0)
    torch.testing.assert_close(log_w, expected, rtol=0, atol=0)
    assert torch.equal(z0, lg.prior_draws(MemberRandom([0, 1], "start"), 4).to(dtype))  # z0 untouched


def test_iwae_chunks_equal_one_plain_pass_bitwise():
    """The replayable chunk (static noise buffer) gives the log-weights of a plain loop that draws
    and weighs chunk by chunk from the same stream; chunks of 7, the last one (2) run eagerly."""
    lg = LinearGaussian(members=2, points=4, latent=3, dim=6, sigma=0.7)
    lg.w, lg.b, lg.x = lg.w.float(), lg.b.float(), lg.x.float()
    q = Normal(lg.post_loc.float() + 0.2, torch.full_like(lg.post_loc.float(), 0.8))
    chunked = est.iwae_log_weights(lg.log_joint, q, MemberRandom([0, 1], "iwae"), 30, chunk=7)
    noise = MemberRandom([0, 1], "iwae")
    plain = []
    for n in (7, 7, 7, 7, 2):
        z = q.loc + q.scale * est.normal_draws(noise, n, 4, 3)
        plain.append(lg.log_joint(z) - q.log_prob(z).sum(-1))
    plain = torch.cat(plain)
    assert not torch.equal(plain[:7], plain[7:14])
    assert chunked.shape == (30, 2, 4)
    torch.testing.assert_close(chunked, plain, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_estimators_equal_eager_on_cuda():
    lg = LinearGaussian(members=2, points=3, latent=2, dim=5, sigma=1.0)
    lg.w, lg.b, lg.x = lg.w.float().cuda(), lg.b.float().cuda(), lg.x.float().cuda()
    betas = obj.sigmoid_schedule(40)
    hmc = est.HMCSettings(leapfrog=3, step_size=0.3, adapt=0.1)
    z0 = lg.prior_draws(MemberRandom([0, 1], "start", "cuda"), 4).float()
    q = Normal(z0[0] + 0.1, torch.full_like(z0[0], 0.9))
    results = {}
    for graphed in (False, True):
        noise = MemberRandom([0, 1], "run", "cuda")
        log_w, info = est.ais(obj.log_prior, lg.log_lik, z0, betas, noise, hmc, graphed=graphed)
        weights = est.iwae_log_weights(lg.log_joint, q, noise, 50, chunk=6, graphed=graphed)
        results[graphed] = (log_w, weights, info["mean_acceptance"])
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-5)
    assert results[True][2] == pytest.approx(results[False][2], abs=1e-5)


def test_the_ais_convergence_study_writes_every_step_and_chain_count(tmp_path, two_datasets):  # noqa: F811
    """scripts/ais_convergence.py on a trained run: one entry per step count with the estimate of
    each chain count (the first c chains), finite, per member; IWAE beside; the HMC statistics as
    plain numbers (AIS also returns per-member tensors, which JSON cannot hold)."""
    import importlib.util
    import json
    from pathlib import Path

    from test_packs import configs  # tests/ is on sys.path

    from avae.training.config import Runtime
    from avae.training.train import train

    script = Path(__file__).resolve().parents[1] / "scripts" / "ais_convergence.py"
    spec = importlib.util.spec_from_file_location("ais_convergence", script)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    run = train(configs("avb", epochs=1)[0], tmp_path / "run", runtime=Runtime(progress=False))
    out = tmp_path / "ais.json"
    argv = [str(run), "--points", "4", "--steps", "3,6", "--chains", "3", "--subchains", "1", "--iwae-k", "5"]
    assert study.main([*argv, "--out", str(out)]) == 0
    entry = json.loads(out.read_text())[run.name]
    assert entry["points"] == 4 and entry["model"] == "avb" and math.isfinite(entry["iwae_k5"]["mean"])
    assert list(entry["ais"]) == ["3", "6"]
    for steps in entry["ais"].values():
        assert list(steps["by_chains"]) == ["1", "3"]
        assert all(
            math.isfinite(v["mean"]) and len(v["per_member"]) == 2 for v in steps["by_chains"].values()
        )
        assert steps["hmc"] and all(isinstance(v, float) for v in steps["hmc"].values())


def study_script():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "ais_convergence.py"
    spec = importlib.util.spec_from_file_location("ais_convergence", script)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_ais_from_a_gaussian_near_the_posterior_is_exact_in_the_limit_and_faster():
    """The AIS start of scripts/ais_convergence.py --start encoder: the geometric path from a
    diagonal Gaussian r (here the exact posterior's marginals, as a fitted encoder would be) to
    p(z) p(x|z) estimates the exact log p(x) of a linear-Gaussian model, within 0.1 nats at 200
    steps; at 50 steps, where AIS from the prior is more than a nat low, within a few tenths."""
    from avae.likelihood.scoring import EvalSettings

    study = study_script()
    lg = LinearGaussian(members=2, points=8, latent=10, dim=50, sigma=2.0)
    start = Normal(lg.post_loc, torch.diagonal(lg.post_cov, dim1=1, dim2=2).sqrt().unsqueeze(1))
    errors = {}
    for steps in (50, 200):
        settings = EvalSettings(ais_steps=steps, ais_chains=8, leapfrog=5)
        log_w, _ = study.ais_from(start, lg.log_lik, settings, MemberRandom([0, 1], "encoder-start"))
        errors[steps] = float((est.ais_log_marginal(log_w) - lg.exact).mean())
    from_prior = float(ais_errors(lg, 50, 8, est.HMCSettings(leapfrog=5), seed=0)[0].mean())
    assert -0.3 < errors[50] < 0.1 and -0.1 < errors[200] < 0.1, errors
    assert from_prior < errors[50] - 0.7, (from_prior, errors)


def test_a_member_scored_alone_gets_the_figures_it_gets_beside_the_others(tmp_path, two_datasets):  # noqa: F811
    """scripts/ais_convergence.py --seeds: the members kept are the run's own, with their own random
    streams and IWAE's chunks, so they get their figures to rounding (products batched over fewer
    members may round differently)."""
    import json

    from test_packs import configs  # tests/ is on sys.path

    from avae.training.config import Runtime
    from avae.training.train import train

    study = study_script()
    run = train(configs("vae-noise", epochs=1)[0], tmp_path / "run", runtime=Runtime(progress=False))
    argv = [str(run), "--points", "3", "--steps", "4", "--chains", "2", "--subchains", "1", "--iwae-k", "5"]
    figures = {}
    for seeds in ("", "1"):
        out = tmp_path / f"ais{seeds}.json"
        assert study.main([*argv, "--out", str(out), *(["--seeds", seeds] if seeds else [])]) == 0
        entry = json.loads(out.read_text())[run.name]
        figures[seeds] = entry["ais"]["4"]["by_chains"]["2"]["per_member"], entry["iwae_k5"]["per_member"]
    for alone, beside in zip(figures["1"], figures[""], strict=True):
        assert alone == pytest.approx(beside[1:], rel=1e-6, abs=0)
    with pytest.raises(SystemExit, match="not seeds of this run"):
        study.main([*argv, "--out", str(tmp_path / "x.json"), "--seeds", "7"])
