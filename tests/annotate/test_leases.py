"""Leases: nobody gets an item twice, overlap k honoured, expired leases return, undo never loses or
duplicates a label; concurrent annotators (threads) never double-assign."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotate import services
from annotate.models import Annotation, Assignment, Item
from slmsite.services import user_create
from tests.annotate.conftest import make_project


def _ann(n: int):  # type: ignore[no-untyped-def]
    return [user_create(username=f"a{n}-{i}", password="pw-123456", annotator=True) for i in range(n)]


def test_lease_resumes_and_next_excludes(project, annotator_user):
    a = services.lease_next(project=project, user=annotator_user)
    assert a is not None
    again = services.lease_next(project=project, user=annotator_user)
    assert again.item_id == a.item_id  # progress survives a reload
    b = services.lease_next(project=project, user=annotator_user, exclude=[a.item_id])
    assert b.item_id != a.item_id


def test_single_item_goes_to_one_annotator_until_expiry(db, settings):
    project = make_project()
    Item.objects.filter(project=project).exclude(pk=Item.objects.filter(project=project).first().pk).delete()
    u1, u2 = _ann(2)
    a1 = services.lease_next(project=project, user=u1)
    assert a1 is not None
    assert services.lease_next(project=project, user=u2) is None  # leased to u1
    Assignment.objects.filter(pk=a1.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    a2 = services.lease_next(project=project, user=u2)
    assert a2 is not None and a2.item_id == a1.item_id  # the expired lease returned to the pool
    with pytest.raises(services.LeaseLost):
        services.label_submit(project=project, user=u1, item_id=a1.item_id, label="positive")
    services.label_submit(project=project, user=u2, item_id=a2.item_id, label="positive")
    assert Annotation.objects.filter(item_id=a1.item_id).count() == 1


def test_overlap_k_labels_then_agreement_or_dispute(db):
    project = make_project(overlap_k=2, overlap_fraction=1.0)
    u1, u2, u3 = _ann(3)
    item = Item.objects.filter(project=project).order_by("id").first()
    Item.objects.filter(project=project).exclude(pk=item.pk).delete()
    a1 = services.lease_next(project=project, user=u1)
    a2 = services.lease_next(project=project, user=u2)
    assert a1.item_id == a2.item_id == item.pk  # k=2: both get it
    assert services.lease_next(project=project, user=u3) is None  # but not a third
    assert services.lease_next(project=project, user=u1, exclude=[item.pk]) is None  # nor twice
    services.label_submit(project=project, user=u1, item_id=item.pk, label="positive")
    item.refresh_from_db()
    assert item.final_label == "" and item.n_labels == 1
    services.label_submit(project=project, user=u2, item_id=item.pk, label="negative")
    item.refresh_from_db()
    assert item.disputed and item.final_label == ""
    services.item_adjudicate(item=item, label="negative", user=u1)
    item.refresh_from_db()
    assert item.final_label == "negative" and item.adjudicated and not item.disputed


def test_skip_frees_the_slot_and_is_not_served_again(project, annotator_user, admin_user):
    a = services.lease_next(project=project, user=annotator_user)
    services.item_skip(project=project, user=annotator_user, item_id=a.item_id)
    seen = set()
    while (b := services.lease_next(project=project, user=annotator_user)) is not None:
        seen.add(b.item_id)
        services.label_submit(project=project, user=annotator_user, item_id=b.item_id, label="positive")
    assert a.item_id not in seen
    other = services.lease_next(project=project, user=admin_user)
    assert other is not None and other.item_id == a.item_id  # someone else can take the skipped item


def test_undo_returns_item_without_losing_or_duplicating(project, annotator_user):
    a = services.lease_next(project=project, user=annotator_user)
    services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="negative")
    b = services.lease_next(project=project, user=annotator_user)
    item = services.label_undo(project=project, user=annotator_user)
    assert item.pk == a.item_id and item.n_labels == 0
    assert Annotation.objects.filter(item_id=a.item_id).count() == 0
    with pytest.raises(services.LeaseLost):  # double undo can't re-undo the same label twice
        services.label_submit(project=project, user=annotator_user, item_id=b.item_id + 10_000, label="negative")
    # the undone item is served back first (it is leased to me again), relabel it
    nxt = services.lease_next(project=project, user=annotator_user, exclude=[b.item_id])
    assert nxt.item_id == a.item_id
    services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="positive")
    assert list(Annotation.objects.filter(item_id=a.item_id).values_list("label", flat=True)) == ["positive"]
    with pytest.raises(services.LeaseLost):  # a repeated submit (double key press) is refused
        services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="positive")
    assert services.label_undo(project=project, user=annotator_user).pk == a.item_id
    assert Annotation.objects.filter(project=project, annotator=annotator_user).count() == 0


def test_unknown_label_is_refused(project, annotator_user):
    from django.core.exceptions import ValidationError

    a = services.lease_next(project=project, user=annotator_user)
    with pytest.raises(ValidationError):
        services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="meh")


@pytest.mark.django_db(transaction=True)
def test_concurrent_annotators_never_double_assign():
    """N threads (own DB connections) lease and label until the pool is empty: every item labelled once."""
    project = make_project(n_extra=40)
    users = _ann(4)
    total = Item.objects.filter(project=project).count()
    errors: list[BaseException] = []
    got: dict[int, list[int]] = {u.pk: [] for u in users}
    barrier = threading.Barrier(len(users))

    def work(user) -> None:  # type: ignore[no-untyped-def]
        try:
            barrier.wait(timeout=10)
            while True:
                a = services.lease_next(project=project, user=user)
                if a is None:
                    break
                got[user.pk].append(a.item_id)
                try:
                    services.label_submit(project=project, user=user, item_id=a.item_id, label="positive")
                except services.LeaseLost:
                    pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    leased = [i for ids in got.values() for i in ids]
    assert len(leased) == len(set(leased)) == total  # no item leased to two annotators, none lost
    assert Annotation.objects.filter(project=project).count() == total
    assert Item.objects.filter(project=project, n_labels=1).count() == total
    assert all(len(ids) > 0 for ids in got.values()) or total < len(users)


def test_admin_undo_of_a_gold_label_takes_the_gold_label_back(admin_user):
    project = make_project()
    item = Item.objects.filter(project=project).first()
    Item.objects.filter(pk=item.pk).update(is_gold=True, gold_label="", score=99.0)  # lane: gold to do
    Item.objects.exclude(pk=item.pk).filter(project=project).update(adjudicated=True)  # lane: closed
    a = services.lease_next(project=project, user=admin_user)
    assert a is not None and a.item_id == item.pk
    services.label_submit(project=project, user=admin_user, item_id=item.pk, label="positive")
    item.refresh_from_db()
    assert item.gold_label == "positive"
    back = services.label_undo(project=project, user=admin_user)
    assert back is not None and back.pk == item.pk
    item.refresh_from_db()
    assert item.gold_label == "" and item.lane == Item.GOLD_TODO
    services.label_submit(project=project, user=admin_user, item_id=item.pk, label="negative")
    item.refresh_from_db()
    assert item.gold_label == "negative"  # the corrected label, not the undone one


def test_imported_gold_label_survives_an_admin_undo(admin_user):
    project = make_project()
    item = Item.objects.filter(project=project).first()
    Item.objects.filter(pk=item.pk).update(is_gold=True, gold_label="negative")  # lane: gold
    Item.objects.exclude(pk=item.pk).filter(project=project).update(adjudicated=True)  # lane: closed
    assert services.lease_next(project=project, user=admin_user).item_id == item.pk
    services.label_submit(project=project, user=admin_user, item_id=item.pk, label="positive")
    services.label_undo(project=project, user=admin_user)
    item.refresh_from_db()
    assert item.gold_label == "negative"
